from canaryflow.cli.main import main

main()
