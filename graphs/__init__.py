"""mudelta.graphs: the architecture IR."""
