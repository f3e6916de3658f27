"""Experiments of several runs, above training and evaluation: STD/CSG pairs of one config, over
seeds, and their statistics. Only the command-line programs import this package."""
