from aiserving.cli import main

main()
