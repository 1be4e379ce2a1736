from followups.worker.main import main

main()
