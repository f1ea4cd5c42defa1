"""What every stage needs and no stage owns: typed errors, atomic text files, FineGym list parsing, clip ids.

Pure Python (no torch), imports no stage, so ``gymqa`` can use it and stay torch-free.
"""
