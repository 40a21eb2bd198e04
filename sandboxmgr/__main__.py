from sandboxmgr.fastrun import main

main()
