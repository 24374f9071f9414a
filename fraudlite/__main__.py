from fraudlite.cli import main

raise SystemExit(main())
