from l2vpn.cli import main

raise SystemExit(main())
