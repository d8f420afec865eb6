"""The loramux service: Ray Serve application, replica engine, Python SDK and CLI.

Importing ``services`` stays light (no torch, no Ray): the engine lives in
``services.engine`` and the Ray application in private modules imported on use.
"""

__all__: list[str] = []
