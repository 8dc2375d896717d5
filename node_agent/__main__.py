from node_agent.cli import main

main()
