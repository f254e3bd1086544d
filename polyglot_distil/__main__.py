from polyglot_distil.cli import program

program()
