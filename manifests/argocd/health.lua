-- Argo CD health check for matchops.dev/MatchIngestion.
--
-- Reads the kstatus conditions the operator writes: Ready is always present, Reconciling and
-- Stalled only while True, and status.observedGeneration tells which spec they describe.
--   Progressing  the operator has not reported on the current generation yet, or Reconciling
--                is True (rolling out, or retrying a cause that may pass on its own)
--   Degraded     Stalled is True (someone must act), or Ready is False for a failure the
--                operator is not working through (e.g. the last scraper run failed)
--   Healthy      Ready is True for the current generation
-- Written for Lua 5.1 (Argo CD's interpreter) and no library beyond the base one.

local hs = {}

local function verdict(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local function find_condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local reason = condition.reason or ""
  local message = condition.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if reason ~= "" then
    return reason
  end
  return message
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil then
  return verdict("Progressing", "Waiting for the matchops operator to report status")
end

local observed = status.observedGeneration
if observed == nil then
  return verdict("Progressing", "Waiting for the matchops operator to observe this resource")
end
if generation ~= nil and observed < generation then
  return verdict(
    "Progressing",
    "Waiting for the matchops operator to observe generation " .. generation
      .. " (status describes generation " .. observed .. ")"
  )
end

local conditions = status.conditions
local stalled = find_condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  return verdict("Degraded", describe(stalled))
end

local reconciling = find_condition(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  return verdict("Progressing", describe(reconciling))
end

local ready = find_condition(conditions, "Ready")
if ready == nil then
  return verdict("Progressing", "Waiting for the Ready condition")
end
-- A condition stamped with an older generation describes an older spec.
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return verdict("Progressing", "Waiting for the Ready condition of generation " .. generation)
end
if ready.status == "True" then
  return verdict("Healthy", describe(ready))
end
if ready.status == "False" then
  return verdict("Degraded", describe(ready))
end
return verdict("Progressing", describe(ready))
