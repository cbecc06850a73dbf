"""kotune: Korean domain documents to a fine-tuned, evaluated, servable LLM."""

__version__ = "0.1.0"
