from mnistkit.cli import main

main()
