"""An offline GPU host's bundle: every graph compiled here, the wheels and the source, split
into parts small enough to carry (`bundle`)."""
