from aiserving.cli.app import main

main()
