from sandboxmgr.cli import main

main()
