"""When a run evaluates: at every multiple of `every` steps and at the last step, leaving out a
multiple closer than half an interval to the end (the final evaluation stands for it), so that no
two evaluations fall one step apart."""


def is_eval_step(step: int, every: int, total: int) -> bool:
  if step == total:
    return True
  return step % every == 0 and total - step >= every / 2


def eval_steps(every: int, total: int) -> list[int]:
  return [s for s in range(1, total + 1) if is_eval_step(s, every, total)]
