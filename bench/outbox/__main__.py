from bench.outbox.run import main

main()
