"""Light plugins that ship with treadle and register only through entry points."""
