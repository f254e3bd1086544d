"""polyglot-distil: compact, language-specific models out of multilingual encoders.

Pipeline: corpus -> counts -> kept vocabulary -> trimmed model -> student (general phase)
-> student (task phase) -> evaluation. The package is layered (docs/ARCHITECTURE.md): `data/`,
`models/`, `vocab/`, `distill/`, `eval/`, then `pipeline` and `cli/`; each stage is one function
(`polyglot_distil.api`) and one command.
"""

__version__ = "0.1.0"
