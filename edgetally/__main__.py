from edgetally.cli import main

main()
