from jaxasync.cli import main

main()
