//! Unit tests of scenario files: parsing, strictness and the named bounds.

use super::*;

fn parse(extra: &str) -> Result<Scenario, String> {
    let text = format!(
        "name = \"t\"\nduration = \"10s\"\n[plugin]\nname = \"noop\"\n[input]\njson = {{}}\n{extra}"
    );
    let mut s: Scenario = toml::from_str(&text).map_err(|e| e.to_string())?;
    s.dir = PathBuf::from(".");
    s.check()?;
    Ok(s)
}

#[test]
fn arrival_patterns_make_the_planned_number_of_jobs() {
    let s = parse("[arrival]\npattern = \"constant\"\nrate = 5").unwrap();
    let t = schedule(&s);
    assert_eq!(t.len(), 50);
    assert_eq!(t[1], Duration::from_millis(200));

    let s = parse("[arrival]\npattern = \"expected\"\nper_minute = 60\nmultiplier = 3").unwrap();
    assert_eq!(schedule(&s).len(), 30, "3 a second for 10 s");

    let s = parse("[arrival]\npattern = \"ramp\"\nfrom = 0\nto = 10").unwrap();
    let t = schedule(&s);
    assert_eq!(t.len(), 50);
    // Half the jobs arrive in the last 30 % of the time when the rate climbs from 0.
    assert!(t[25] > Duration::from_secs(7), "{:?}", t[25]);
    assert!(t.windows(2).all(|w| w[0] <= w[1]));

    let s = parse(
        "[arrival]\npattern = \"burst\"\njobs = 100\nat = \"2s\"\nover = \"1s\"\nbase_rate = 1",
    )
    .unwrap();
    let t = schedule(&s);
    assert_eq!(t.len(), 110);
    let in_burst = t
        .iter()
        .filter(|d| **d >= Duration::from_secs(2) && **d < Duration::from_secs(3))
        .count();
    assert_eq!(in_burst, 101, "the burst and one background job");
}

#[test]
fn bad_scenarios_say_which_key() {
    let e = parse("[arrival]\npattern = \"constant\"\nrate = 0").unwrap_err();
    assert!(e.contains("arrival.rate"), "{e}");
    let e = parse("[arrival]\npattern = \"constant\"\nrate = 1e9").unwrap_err();
    assert!(e.contains("at most 1000000"), "{e}");
    let e = parse("[arrival]\npattern = \"constant\"\nrate = 1\nspeed = 2").unwrap_err();
    assert!(e.contains("speed"), "{e}");
    let e =
        parse("[arrival]\npattern = \"burst\"\njobs = 5\nat = \"9s\"\nover = \"2s\"").unwrap_err();
    assert!(e.contains("within `duration`"), "{e}");
    let e = parse(
        "[arrival]\npattern = \"constant\"\nrate = 1\n[[timeline]]\nprovider = \"sim\"\nfrom = \"5s\"\nuntil = \"1s\"\noutage = true",
    )
    .unwrap_err();
    assert!(e.contains("timeline[0]"), "{e}");
    let e = parse("[arrival]\npattern = \"constant\"\nrate = 1\n[slo]\nmax_lost = 3").unwrap_err();
    assert!(e.contains("max_lost"), "{e}");
    let e = parse("[arrival]\npattern = \"constant\"\nrate = 1\n[input]\nwords = 3").unwrap_err();
    assert!(e.contains("input"), "{e}");
}

#[test]
fn the_timeline_changes_faults_inside_its_windows_only() {
    let s = parse(
        "[arrival]\npattern = \"constant\"\nrate = 1\n\
         [providers.sim]\nerror_rate = 0.01\n\
         [[timeline]]\nprovider = \"sim\"\nfrom = \"2s\"\nuntil = \"4s\"\noutage = true\n\
         [[timeline]]\nprovider = \"sim\"\nfrom = \"3s\"\nuntil = \"6s\"\nlatency_factor = 5",
    )
    .unwrap();
    let at = |secs: f64| s.faults_at("sim", Duration::from_secs_f64(secs));
    assert_eq!(at(1.0).fail_all, None);
    assert_eq!(at(1.0).error_rate, 0.01);
    assert_eq!(at(2.0).fail_all, Some(503));
    assert_eq!(at(3.5).latency_factor, 5.0);
    assert_eq!(at(3.5).fail_all, Some(503));
    assert_eq!(at(4.0).fail_all, None);
    assert_eq!(at(6.0).latency_factor, 1.0);
    assert_eq!(s.faults_at("sim-b", Duration::from_secs(3)).fail_all, None);
    assert_eq!(
        s.timeline_edges(),
        [2, 3, 4, 6].map(Duration::from_secs).to_vec()
    );
}

#[test]
fn durations_read_as_people_write_them() {
    assert_eq!(human::parse("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(human::parse("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(human::parse("2m"), Some(Duration::from_secs(120)));
    assert_eq!(human::parse("90"), Some(Duration::from_secs(90)));
    assert_eq!(human::parse("soon"), None);
    assert_eq!(human::parse("-1s"), None);
}
