//! Model-based test of scheduling: random sequences of trigger / build finished / crash and
//! restart, run against the real journal and the real scheduler plan, and checked after every
//! step against a plain in-memory model of DESIGN.md's rules: newest wins per hook, one build per
//! project, at most `workers` builds, nothing acknowledged is lost, and no free build thread idles
//! while a runnable job waits.

mod common;

use common::TempDir;
use deployhook::harness::hash_secret;
use deployhook::harness::QueuedJob;
use deployhook::harness::{recover, Action, Plan};
use deployhook::harness::{Hook, JobState, Journal, Op, Outcome};
use std::collections::{BTreeMap, BTreeSet};

const WORKERS: usize = 2;
/// hook index -> project
const HOOKS: [&str; 4] = ["alpha", "alpha", "beta", "gamma"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The plain model: every job's state and each hook's newest job.
#[derive(Default)]
struct Model {
    states: BTreeMap<String, JobState>,
    hook_of: BTreeMap<String, usize>,
    newest: BTreeMap<usize, String>,
    /// Jobs already seen in their terminal state: terminal states never change, so they are
    /// compared once.
    settled: BTreeSet<String>,
}

/// The system under test: the journal, the plan, and which jobs the "build threads" hold.
struct System {
    dir: TempDir,
    journal: Option<Journal>,
    plan: Plan,
    running: BTreeSet<String>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn open_journal(dir: &TempDir) -> (Journal, std::thread::JoinHandle<()>) {
    let (journal, writer) =
        Journal::open(&dir.path().join(deployhook::harness::FILE_NAME)).unwrap();
    let handle = std::thread::spawn(move || writer.run(|_| {}, |_| {}));
    (journal, handle)
}

impl System {
    fn new() -> System {
        let dir = TempDir::in_memory("model");
        let (journal, writer) = open_journal(&dir);
        for (i, project) in HOOKS.iter().enumerate() {
            let hook = Hook {
                id: format!("hook_{i:012}"),
                name: format!("h{i}"),
                project: project.to_string(),
                branch: "main".into(),
                created_at: 0,
                last_triggered_at: None,
            };
            journal
                .submit(Op::CreateHook {
                    hook,
                    secret: hash_secret(&format!("s{i}")),
                })
                .unwrap();
        }
        System {
            dir,
            journal: Some(journal),
            plan: Plan::new(WORKERS),
            running: BTreeSet::new(),
            writer: Some(writer),
        }
    }

    /// Carries out the plan's actions as the daemon does: a started job is marked BUILDING; a
    /// stopped one keeps its build thread until its "finished" step.
    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(job) => {
                    let out = self
                        .j()
                        .submit(Op::Start {
                            job_id: job.id.clone(),
                            now: 1,
                        })
                        .unwrap();
                    assert!(
                        matches!(out, Outcome::Started(_)),
                        "start of {} gave {out:?}",
                        job.id
                    );
                    self.running.insert(job.id);
                }
                Action::Stop(id) | Action::Cancel(id) => {
                    assert!(self.running.contains(&id), "stop of a job not running")
                }
            }
        }
    }

    fn trigger(&mut self, hook: usize, job_id: &str) {
        let out = self
            .j()
            .submit(Op::Trigger {
                secret: hash_secret(&format!("s{hook}")),
                project: HOOKS[hook].into(),
                job_id: job_id.into(),
                now: 1,
                not_before: None,
            })
            .unwrap();
        let Outcome::Triggered { row, superseded } = out else {
            panic!("{out:?}")
        };
        let actions = self.plan.queued(
            QueuedJob::from_row(&row, false),
            superseded.as_ref().map(|(id, _)| id.as_str()),
        );
        self.apply(actions);
    }

    fn finish(&mut self, job_id: &str, ok: bool) {
        let state = if ok { JobState::Ready } else { JobState::Error };
        self.j()
            .submit(Op::Finish {
                job_id: job_id.into(),
                state,
                exit_code: Some(0),
                error: None,
                now: 2,
            })
            .unwrap();
        self.running.remove(job_id);
        let actions = self.plan.finished(job_id);
        self.apply(actions);
    }

    /// Everything in memory is lost; the journal is reopened and the plan rebuilt by the
    /// daemon's own recovery ([`recover`]).
    fn crash_and_restart(&mut self) {
        self.plan = Plan::new(WORKERS);
        self.running.clear();
        // The writer thread ends, closing the file, once the last handle is dropped.
        self.journal = None;
        if let Some(w) = self.writer.take() {
            w.join().unwrap();
        }
        let (journal, writer) = open_journal(&self.dir);
        self.journal = Some(journal);
        self.writer = Some(writer);
        for job in recover(self.j()).unwrap() {
            let actions = self.plan.queued(job, None);
            self.apply(actions);
        }
    }

    fn j(&self) -> &Journal {
        self.journal.as_ref().expect("journal open")
    }
}

fn check(sys: &System, model: &mut Model, step: usize) {
    let ctx = |what: &str| format!("step {step}: {what}");
    let mut newly_settled = Vec::new();
    for (id, expected) in model
        .states
        .iter()
        .filter(|(id, _)| !model.settled.contains(*id))
    {
        if expected.is_terminal() {
            newly_settled.push(id.clone());
        }
        let row = sys
            .j()
            .job(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{}", ctx(&format!("job {id} lost"))));
        assert_eq!(
            row.job.state,
            *expected,
            "{}",
            ctx(&format!("state of {id}"))
        );
        if !row.job.state.is_terminal() {
            assert!(
                sys.plan.holds(id),
                "{}",
                ctx(&format!("open job {id} not scheduled"))
            );
            assert_eq!(
                model.newest.get(&model.hook_of[id]),
                Some(id),
                "{}",
                ctx("an open job is not its hook's newest")
            );
        }
        if row.job.state == JobState::Building {
            assert!(
                sys.running.contains(id),
                "{}",
                ctx(&format!("{id} BUILDING without a build thread"))
            );
        }
    }
    model.settled.extend(newly_settled);
    let mut projects = BTreeSet::new();
    for id in &sys.running {
        assert!(
            projects.insert(HOOKS[model.hook_of[id]]),
            "{}",
            ctx("two builds of one project")
        );
    }
    assert!(
        sys.running.len() <= WORKERS,
        "{}",
        ctx("more builds than workers")
    );
    // Work-conserving: a pending job waits only for a busy project or a full pool.
    for (id, state) in &model.states {
        if *state == JobState::Pending {
            let project = HOOKS[model.hook_of[id]];
            assert!(
                projects.contains(project) || sys.running.len() == WORKERS,
                "{}",
                ctx(&format!("{id} waits for nothing"))
            );
        }
    }
    let open: Vec<String> = sys
        .j()
        .open_jobs()
        .unwrap()
        .into_iter()
        .map(|r| r.job.id)
        .collect();
    let expected_open: Vec<&String> = model
        .states
        .iter()
        .filter(|(_, s)| !s.is_terminal())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(open.len(), expected_open.len(), "{}", ctx("open jobs"));
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut sys = System::new();
    let mut model = Model::default();
    let mut next_id = 0;
    for step in 0..steps {
        match rng.below(10) {
            0..=4 => {
                let hook = rng.below(HOOKS.len());
                let id = format!("{:020}", next_id);
                next_id += 1;
                if let Some(old) = model.newest.get(&hook) {
                    if !model.states[old].is_terminal() {
                        model.states.insert(old.clone(), JobState::Canceled);
                    }
                }
                model.states.insert(id.clone(), JobState::Pending);
                model.hook_of.insert(id.clone(), hook);
                model.newest.insert(hook, id.clone());
                sys.trigger(hook, &id);
            }
            5..=8 => {
                if let Some(id) = sys
                    .running
                    .iter()
                    .nth(rng.below(sys.running.len().max(1)))
                    .cloned()
                {
                    let ok = rng.below(4) != 0;
                    if model.states[&id] == JobState::Building {
                        model.states.insert(
                            id.clone(),
                            if ok { JobState::Ready } else { JobState::Error },
                        );
                    }
                    sys.finish(&id, ok);
                }
            }
            _ => {
                for state in model.states.values_mut() {
                    if *state == JobState::Building {
                        *state = JobState::Pending;
                    }
                }
                sys.crash_and_restart();
            }
        }
        // What the model calls BUILDING is whatever the plan started.
        for id in &sys.running {
            if model.states[id] == JobState::Pending {
                model.states.insert(id.clone(), JobState::Building);
            }
        }
        check(&sys, &mut model, step);
    }
}

#[test]
fn random_schedules_follow_the_rules() {
    for seed in [0x9E37_79B9_7F4A_7C15, 1, 42, 0xDEAD_BEEF, 7_777_777] {
        run(seed, 500);
    }
}
