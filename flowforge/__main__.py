from flowforge.cli import main

main()
