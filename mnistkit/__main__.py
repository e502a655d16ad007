from mnistkit.cli.app import main

main()
