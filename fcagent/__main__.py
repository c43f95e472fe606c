from fcagent.cli import main

main()
