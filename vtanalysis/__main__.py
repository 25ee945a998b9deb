"""`python -m vtanalysis`: the command line (`vtanalysis --help`)."""
from .cli import app

app(prog_name="vtanalysis")
