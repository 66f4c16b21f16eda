"""Labs: the flood generators, the lab topologies and the demos built on them."""
