"""Small synthetic tasks that check a model can learn an algorithm (minGPT's sorting demo)."""
