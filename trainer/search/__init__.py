"""Search shared by the actor and the evaluator: batched PUCT MCTS and the players built on it."""
