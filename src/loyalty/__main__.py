from loyalty.cli import main

main()
