from kling_mcp.cli import main

raise SystemExit(main())
