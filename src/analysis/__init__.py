"""Figures and tables of the paper, computed only from stored run outputs under results/.

The modules (`python -m analysis.paradox` and the others) arrive with the runner and results store;
this package exists now so that the layout users asked for is importable from the start.
"""
