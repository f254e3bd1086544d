from polyglot_distil.cli import main

raise SystemExit(main())
