"""The error a missing dataset raises: the training program catches it and prints its advice."""


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not on this machine; the message says where we looked and how to provide it."""
