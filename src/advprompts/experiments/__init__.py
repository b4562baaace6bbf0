"""The closed loop: train the task model, build each method's extra data, fine-tune, evaluate, report."""
