"""Privacy attack experiments on FEDF, next to FedAvg, and defences (DESIGN §7).

Each adversary sees exactly what it would see in the protocol (the run's
messages), never the workers' data. ``common`` holds the types every
experiment shares; ``views`` runs the protocol arms and records the messages.
"""
