"""The update: the networks, the losses (algorithms/), the training state and the jitted update, the
gradient noise scale, and the batch rule that fits the update to the rank count."""
