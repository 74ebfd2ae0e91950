from modelport.cli.main import run

run()
