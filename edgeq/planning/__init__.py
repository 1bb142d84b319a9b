"""Planning widths: mixed precision's budgets, sizes and plan (mixed.py), the exact knapsack (allocate.py), and
Mix'n'Match's plan from slice estimates (mixnmatch.py; torch-free, the device runs it). This file imports nothing."""
