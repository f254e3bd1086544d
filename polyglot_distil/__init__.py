"""polyglot-distil: compact, language-specific models out of multilingual encoders.

Pipeline: corpus -> counts -> kept vocabulary -> trimmed model -> student (general phase)
-> student (task phase) -> evaluation. Each stage lives in the module named after it.
"""

__version__ = "0.1.0"
