"""--max_time: a run that trains for a wall-clock budget rather than a number of steps.

    parse_duration   5min, 300s, 2h or 90 (seconds) as seconds
    process_start    time.perf_counter() when this process started, so that its start-up counts
    TimeBudget       how fast the run steps, how far into the budget it is (the learning-rate schedule is laid
                     out over the time, so the last step is the end of the schedule), how many steps the rest
                     holds (the progress bar's total), and when to stop so that the last evaluation and
                     checkpoint end inside the budget (an evaluation as long as the last one, or longer by as
                     much as the steps have slowed since: the machine got busier)

The budget is the run's elapsed wall clock (RunState.elapsed: start-up, steps, evaluations and checkpoints, over
its resumes). Before each step the run asks should_end: one more step at the recent pace, then an evaluation
and checkpoint as long as the last one took, must still fit.
"""
import collections
import math
import os
import re
import time

from configurator import UserError


UNITS = {'': 1, 's': 1, 'sec': 1, 'm': 60, 'min': 60, 'h': 3600}
PACE_STEPS = 32  # the pace is the mean time a step took over the last this many steps since an evaluation


def parse_duration(text, name='--max_time'):
    """Seconds of a duration written as a number and a unit (300s, 5min, 1.5h; no unit: seconds)."""
    match = re.fullmatch(r'\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*', str(text).lower())
    if not match or match.group(2) not in UNITS:
        raise UserError(f"{name}={text} is not a duration: write a number and a unit (300s, 5min, 2h)")
    seconds = float(match.group(1)) * UNITS[match.group(2)]
    if seconds <= 0:
        raise UserError(f"{name}={text} must be more than zero")
    return seconds


def process_start():
    """time.perf_counter() when this process started (its interpreter and imports are start-up too), read from
    Linux's /proc; where there is none, now."""
    try:
        with open('/proc/self/stat') as f:
            start_ticks = int(f.read().rpartition(')')[2].split()[19])  # field 22: start time, in ticks after boot
        with open('/proc/uptime') as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        age = 0.0
    return time.perf_counter() - max(0.0, age)


class TimeBudget:
    """The plan of a run that trains for seconds of wall clock."""

    def __init__(self, seconds, eval_interval):
        self.seconds, self.eval_interval = seconds, eval_interval
        self.marks = collections.deque(maxlen=PACE_STEPS + 1)  # (time, iteration) after the recent steps
        self.evaluation_s = 0.0  # what the last evaluation took, with its checkpoints and plot
        self.longest_s = 0.0  # and the longest of them (the first, which pays one-time costs, as a rule)
        self.pace_after = None  # the pace first measured after it: where the machine's load stood then
        self.last_pace = None  # the pace last measured, which stands until the steps after an evaluation give one

    def stepped(self, iteration, now=None):
        self.marks.append((time.perf_counter() if now is None else now, iteration))
        if self.pace_after is None:
            self.pace_after = self.recent_step_s()

    def next_evaluation_s(self):
        """What the next evaluation will take: the last one's seconds, longer by as much as steps have slowed
        since (other work that starts on the machine slows both alike), never shorter."""
        step_s = self.step_s()
        if step_s is None or not self.pace_after:
            return self.evaluation_s
        return self.evaluation_s * max(1.0, step_s / self.pace_after)

    def evaluated(self, seconds):
        """After an evaluation that took seconds: the pace is measured again from the next step on (the first
        step after it may pay for it, as the first of all pays for compiling)."""
        self.evaluation_s, self.pace_after = seconds, None
        self.longest_s = max(self.longest_s, seconds)
        self.marks.clear()

    def recent_step_s(self):
        """Seconds a step took over the steps since the last evaluation (at most PACE_STEPS), or None before two."""
        if len(self.marks) < 2:
            return None
        (t0, i0), (t1, i1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (i1 - i0)

    def step_s(self):
        """Seconds a step takes at the recent pace: since the last evaluation, else as last measured (None before
        any)."""
        recent = self.recent_step_s()
        if recent is not None:
            self.last_pace = recent
        return self.last_pace

    def should_end(self, elapsed):
        """Whether the run must stop before another step, elapsed seconds into the budget: one more step at the
        recent pace and then the last evaluation would not end inside it."""
        return elapsed + (self.step_s() or 0.0) + self.next_evaluation_s() > self.seconds

    def progress(self, elapsed, spent_s):
        """Where the learning-rate schedule stands, elapsed seconds into the budget of which spent_s went to
        start-up and evaluations: the share of the time for steps gone by (the budget less what was spent so and
        the longest evaluation yet, room for the last), from 0 at the first step to 1 at the end. It never goes
        back: an evaluation, a resume's start-up or a longer evaluation only shorten what is left."""
        steps_s = max(0.0, elapsed - spent_s)
        return min(1.0, steps_s / max(1e-9, self.seconds - spent_s - self.longest_s))

    def planned_iters(self, iteration, elapsed):
        """How many iterations the whole run will have, at the recent pace and with an evaluation every
        eval_interval steps as long as the last: where the schedule ends. None before the pace is known."""
        step_s = self.step_s()
        if step_s is None:
            return None
        evaluation_s = self.next_evaluation_s()  # as should_end reckons it, so the schedule ends where the run does
        left = self.seconds - elapsed - evaluation_s
        return iteration + max(0, math.floor(left / (step_s + evaluation_s / self.eval_interval)))
