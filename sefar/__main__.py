from sefar.cli import main

raise SystemExit(main())
