from fcagent.cli.app import main

main()
