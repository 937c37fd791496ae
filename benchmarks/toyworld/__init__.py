"""The toy world the quality bench measures on: seeded synthetic scenes (world.py), a judge without a
neural network (judge.py) and a small SD1.5-architecture text-to-image model trained on the world
(model.py, train.py, weights in this folder). Benchmark-only: `.comfyignore` keeps it out of the pack."""
