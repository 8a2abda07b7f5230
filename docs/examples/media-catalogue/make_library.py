"""Write a small music library: tiny ``.mp3`` files carrying only an ID3v1 tag.

An ID3v1 tag is the last 128 bytes of the file: "TAG", then title, artist and
album (30 bytes each), year (4), comment (30) and genre (1). Real players read it;
here it lets `identify` read real metadata without shipping real audio.
"""

import sys
from pathlib import Path

ALBUMS = [
    ("night-ferry", "Night Ferry", "The Lamplighters", "Harbour Lights", "1979"),
    ("glass-garden", "Glass Garden", "Mira Vance", "Glass Garden", "1984"),
    ("slow-river", "Slow River", "The Lamplighters", "Harbour Lights", "1979"),
    ("copper-sky", "Copper Sky", "Okoro Quartet", "Copper Sky", "2016"),
]


def field(text: str, size: int) -> bytes:
    return text.encode("latin-1")[:size].ljust(size, b"\0")


def id3v1(title: str, artist: str, album: str, year: str) -> bytes:
    tag = b"TAG" + field(title, 30) + field(artist, 30) + field(album, 30) + field(year, 4)
    return tag + field("", 30) + bytes([255])


def main(target: str = "library") -> None:
    folder = Path(target)
    folder.mkdir(exist_ok=True)
    for slug, title, artist, album, year in ALBUMS:
        audio = bytes(range(256)) * 8  # stands in for the audio frames
        (folder / f"{slug}.mp3").write_bytes(audio + id3v1(title, artist, album, year))
    print(f"wrote {len(ALBUMS)} files to {folder}/")


if __name__ == "__main__":
    main(*sys.argv[1:])
