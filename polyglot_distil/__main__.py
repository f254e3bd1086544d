from polyglot_distil.cli import command_line

raise SystemExit(command_line())
