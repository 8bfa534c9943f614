"""The bottom layer, imported by every stage: the one typed configuration and its errors, the process's start
time and its one-line messages. It imports no other part of jaxpong."""
