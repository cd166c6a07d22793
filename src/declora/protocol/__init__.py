"""What nodes say to each other: the wire format and its authentication and encryption, one
node's exchange (the message it sends and how it mixes what it receives), a gossip step's
phases on every live edge, and the round, written once for both runtimes."""
