"""python -m nrr_engine"""
from .cli import main

main()
