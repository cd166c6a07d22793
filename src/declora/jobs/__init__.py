"""Jobs built on a run: the traffic estimate, the data survey, several seeds and the
hyper-parameter search. They never import each other."""
