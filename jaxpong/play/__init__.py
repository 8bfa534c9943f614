"""Collection: the games (envpool), frames -> network inputs, the host loop that fills a round's fixed-shape
batch, the policy step on the host, the deadline that ends a round's collection, the random streams."""
